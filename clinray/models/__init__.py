"""Model builders and loaders: the tiny test models and the chat format of the paper."""
