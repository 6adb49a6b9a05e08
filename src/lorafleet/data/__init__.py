"""Chat data in, prepared dataset out: readers for four formats, validation, templating, loss masks."""
