"""clinray: clinical LLM adaptation on Ray."""
