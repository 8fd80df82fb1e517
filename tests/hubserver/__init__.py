"""A Hugging Face Hub-compatible HTTP server that tests start on 127.0.0.1."""

from tests.hubserver.server import Fault, TestHub, git_blob_sha1

__all__ = ["Fault", "TestHub", "git_blob_sha1"]
