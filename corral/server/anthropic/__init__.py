"""Anthropic dialect: the Messages API (``/v1/messages``) over the same backend as every other dialect."""
