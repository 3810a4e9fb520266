"""Prompt formats: templates render a call into the model's prompt; parsers split its output back."""
