"""The `lorafleet` command line: each command parses its options, calls one library function, prints.

One module per command group; each registers its commands on `app` here.
"""

from __future__ import annotations

import typer

from lorafleet.cli import adapters, data, demo, keys, serve, train
from lorafleet.cli import eval as eval_cli  # the module is named for its command, not the builtin

app = typer.Typer(
    help="Turn chat data into LoRA / QLoRA adapters and serve a fleet of them on one base model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data.model_app, name="model")
data.register(app)
train.register(app)
app.add_typer(adapters.adapters_app, name="adapters")
app.add_typer(keys.keys_app, name="keys")
app.command("demo")(demo.demo)
serve.register(app)
eval_cli.register(app)
