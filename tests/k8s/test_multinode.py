"""The multi-node generative launch: the Indexed Job's own shell script, run as two "nodes".

1. With a stand-in `torchrun` that records its argv, the script's command line for each index is
   parsed by torch's own torchrun parser and checked against the contract.
2. With the real `torchrun`, the script runs twice on this machine (indexes 0 and 1, one process
   each, as two pods would): the c10d rendezvous hosted by index 0 must bring both up as one
   gloo world of two. The rendezvous endpoint (pod 0's cluster DNS name) is 127.0.0.1 here, and
   the worker module is a stand-in that all-reduces a tensor (the generative recipe's own worker is
   exercised by its tests and the 2-GPU run). Gloo is pinned to the loopback interface here
   (GLOO_SOCKET_IFNAME=lo); in the pods NCCL picks the pod network.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.k8s.manifests import container_env, find, pytorchjob, rendered

WORKER_MODULE = "services.trainer.recipes.generative.worker"


def _job():
    docs = rendered("generative-multinode")
    job = find(docs, "Job", "tunewire-generative")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["/bin/sh", "-c"] and len(c["args"]) == 1
    return job, c, container_env(c, docs)


def _run_script(script, env, cwd, timeout):
    return subprocess.run(
        ["/bin/sh", "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("index", [0, 1])
def test_command_line_parses_as_torchrun(index, tmp_path):
    from torch.distributed.run import get_args_parser

    job, c, env = _job()
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "torchrun").write_text(
        f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n"
    )
    (fake / "torchrun").chmod(0o755)
    run_env = {**env, "JOB_COMPLETION_INDEX": str(index), "PATH": f"{fake}:/usr/bin:/bin"}
    out = _run_script(c["args"][0], run_env, tmp_path, 30)
    assert out.returncode == 0, out.stderr
    args = get_args_parser().parse_args(json.loads(out.stdout))
    assert args.nnodes == env["NNODES"] == str(job["spec"]["completions"])
    assert args.nproc_per_node == env["NPROC_PER_NODE"]
    assert args.node_rank == index
    assert args.rdzv_backend == "c10d"
    assert args.rdzv_endpoint == "tunewire-generative-0.tunewire-generative:29400"
    assert args.rdzv_id == env["TUNEWIRE_JOB_ID"]
    assert args.rdzv_conf == f"is_host={'true' if index == 0 else 'false'}"
    assert args.module and args.training_script == WORKER_MODULE
    assert args.training_script_args == ["--job-dir", env["JOB_DIR"]]


def test_pytorchjob_command_matches_the_indexed_job():
    _, c, _ = _job()
    (pc,) = pytorchjob()["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    normalise = lambda s: s.replace("$JOB_COMPLETION_INDEX", "$RANK").replace(
        '"$RDZV_ENDPOINT"', '"tunewire-generative-master-0:29400"'
    )
    assert normalise(c["args"][0]) == pc["args"][0]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STUB_WORKER = textwrap.dedent("""
    import argparse, json, os
    import torch, torch.distributed as dist
    p = argparse.ArgumentParser()
    p.add_argument("--job-dir", required=True)
    a = p.parse_args()
    dist.init_process_group("gloo")
    t = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(t)
    with open(os.path.join(a.job_dir, f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump({"rank": dist.get_rank(), "world": dist.get_world_size(), "sum": t.item(),
                   "group_rank": int(os.environ["GROUP_RANK"])}, f)
    dist.destroy_process_group()
""")


def test_two_nodes_meet_through_c10d_rendezvous(tmp_path):
    _, c, env = _job()
    # A stand-in for the worker module, first on the path through the working directory.
    pkg = tmp_path / "work"
    module_dir = pkg.joinpath(*WORKER_MODULE.split(".")[:-1])
    module_dir.mkdir(parents=True)
    for d in [module_dir, *module_dir.parents]:
        if d == pkg:
            break
        (d / "__init__.py").touch()
    (module_dir / "worker.py").write_text(STUB_WORKER)

    mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "jobs")
    job_dir = tmp_path / "jobs" / env["JOB_DIR"].removeprefix(mount + "/")
    job_dir.mkdir(parents=True)
    base_env = {
        **env,
        "JOB_DIR": str(job_dir),
        "RDZV_ENDPOINT": f"127.0.0.1:{_free_port()}",
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
    }
    nodes = [
        subprocess.Popen(
            ["/bin/sh", "-c", c["args"][0]],
            env={**base_env, "JOB_COMPLETION_INDEX": str(i)},
            cwd=pkg,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in (0, 1)
    ]
    logs = []
    try:
        for node in nodes:
            logs.append(node.communicate(timeout=180)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for i, node in enumerate(nodes):
        assert node.returncode == 0, f"node {i}:\n{logs[i][-3000:]}"
    results = [json.loads((job_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in results] == [2, 2]
    assert [r["sum"] for r in results] == [3.0, 3.0]
    assert sorted(r["group_rank"] for r in results) == [0, 1]
