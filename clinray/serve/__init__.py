"""Serving: :mod:`clinray.serve.setup` wires a Medprompt setup from one config (CLI, demo, evaluation);
:mod:`clinray.serve.app` is the Ray Serve application (``build_app``: LLM, retriever and a FastAPI
ingress with the Medprompt and OpenAI-compatible routes), and :mod:`clinray.serve.run` its ``serve`` job.

The package sits above engines, retrieval and prompting and composes them, so that the CLI, the demo
and the evaluation all answer through the same objects a served model uses. Heavy modules (Ray Serve,
FastAPI, torch) are imported by the submodules only.
"""
