"""OpenAI's /v1 dialect: wire types and the routes that translate it onto the backend."""
