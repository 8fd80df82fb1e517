"""A Hugging Face Hub-compatible HTTP server that tests start on 127.0.0.1."""

from tests.hubserver.server import Fault, TestHub, git_blob_sha1

__all__ = ["Fault", "TestHub", "allow_test_hub", "git_blob_sha1"]


def allow_test_hub(monkeypatch) -> None:
    """Let huggingface_hub talk to the loopback test Hub in a test run that is otherwise offline
    (scripts/test.sh sets HF_HUB_OFFLINE=1 so that nothing can download from the real Hub), and
    speak LFS rather than Xet, which the test Hub does not implement."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # subprocesses started by the test
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
