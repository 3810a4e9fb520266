"""Go text/template, as Ollama's Modelfile TEMPLATEs use it: lexer, parser, executor, Go formatting and Ollama's template data."""
