"""The HTTP front door (app layer): OpenAI/TEI embeddings and Ludwig-serve predictions over the
gRPC services. `python clients/cli.py serve http` runs it."""
