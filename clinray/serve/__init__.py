"""Serving lives here: :mod:`clinray.serve.setup` wires a Medprompt setup from one config today; the Ray
Serve deployments and the application builder will join it.

The package sits above engines, retrieval and prompting and composes them, so that the CLI, the demo
and the evaluation all answer through the same objects a served model uses.
"""
