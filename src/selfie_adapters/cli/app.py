"""The typer apps that command modules attach to (kept apart to avoid import cycles)."""

import typer

app = typer.Typer(name="selfie", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Let a language model describe its own internal vectors in words (SelfIE adapters).")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate adapters and their descriptions.")
app.add_typer(eval_app, name="eval")
baseline_app = typer.Typer(no_args_is_help=True, help="Baselines that label vectors without an adapter, written "
                           "as describe rows so every eval scores them beside the adapters.")
app.add_typer(baseline_app, name="baseline")
