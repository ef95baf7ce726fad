#!/usr/bin/env python3
"""Start N processes on this machine that form one global JAX mesh (CPU devices, gloo collectives).

    python launch/local_multiprocess.py --num_processes=2 --devices_per_process=4 -- \
        llada train --config=configs/tiny.py --workdir=runs/mp

Each process gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, which `llada` reads to call
`jax.distributed.initialize()`. Process 0's output is shown; the others' go to WORKDIR-less log files
`local_multiprocess.<id>.log` in --log_dir. If any process fails, the rest are stopped and the exit code is non-zero.
"""
import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_processes", type=int, default=2)
    p.add_argument("--devices_per_process", type=int, default=4)
    p.add_argument("--log_dir", default=".")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command, e.g. llada train ...")
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("give the command to run after --, e.g. -- llada train --workdir=runs/mp")
    if cmd[0] == "llada" and not shutil.which("llada"):
        cmd = [sys.executable, "-m", "llada_jax.cli"] + cmd[1:]
    address = f"127.0.0.1:{free_port()}"
    os.makedirs(args.log_dir, exist_ok=True)
    procs, logs = [], []
    for i in range(args.num_processes):
        env = {**os.environ, "JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": str(args.num_processes),
               "JAX_PROCESS_ID": str(i), "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={args.devices_per_process}"}
        out = None
        if i > 0:
            out = open(os.path.join(args.log_dir, f"local_multiprocess.{i}.log"), "w")
            logs.append(out)
        procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None))
    code = 0
    try:
        while any(pr.poll() is None for pr in procs):
            failed = [pr for pr in procs if pr.poll() not in (None, 0)]
            if failed:
                code = failed[0].returncode
                print(f"local_multiprocess: a process exited with {code}; stopping the others "
                      f"(logs in {args.log_dir}/local_multiprocess.*.log)", file=sys.stderr)
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        code = 130
    finally:
        for pr in procs:
            if pr.poll() is None:
                pr.send_signal(signal.SIGTERM if code == 0 else signal.SIGKILL)
        for pr in procs:
            pr.wait()
        for f in logs:
            f.close()
    return code or max((pr.returncode or 0) for pr in procs)


if __name__ == "__main__":
    sys.exit(main())
