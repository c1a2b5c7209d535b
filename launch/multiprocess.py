r"""Plain multi-process launcher: N processes of one command on this node, one JAX run.

    # one process per GPU on this node (4 GPUs):
    python launch/multiprocess.py --processes=4 --gpus_per_process=1 -- \
        python -m spt_jax.main --config=configs/visa.py:vit_h --workdir=runs/visa_h
    # two nodes without a scheduler: the same line on each, with its --node_rank:
    python launch/multiprocess.py --processes=8 --gpus_per_process=1 --nodes=2 \
        --node_rank=0 --coordinator=node0:12355 -- python -m spt_jax.main ...
    # simulate two hosts on a CPU-only machine (4 CPU devices per process):
    python launch/multiprocess.py --processes=2 --cpu_devices_per_process=4 -- python ...

Each process gets the environment that `spt_jax.parallel.maybe_initialize_distributed`
reads: SPT_DISTRIBUTED=1, JAX_COORDINATOR_ADDRESS, SPT_NUM_PROCESSES, SPT_PROCESS_ID,
and JAX_LOCAL_DEVICE_IDS (its GPUs) or XLA_FLAGS (its CPU device count). The launcher
waits for all of them; when one fails it stops the others and exits with its code.
SIGTERM to the launcher (preemption) is passed to every process: they save one agreed
step and exit with code 75, which the launcher returns, saying how to resume.
Under SLURM use `srun` instead (launch/gpu_slurm.sh): JAX reads SLURM's variables.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

# spt_jax.train.preemption.PREEMPTED_EXIT_CODE (this launcher imports nothing of the
# package: it only starts processes).
PREEMPTED_EXIT_CODE = 75


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--processes", type=int, required=True,
                      help="processes on ALL nodes together")
  parser.add_argument("--nodes", type=int, default=1)
  parser.add_argument("--node_rank", type=int, default=0)
  parser.add_argument("--coordinator", default="",
                      help="host:port of process 0 (default: localhost, a free port)")
  parser.add_argument("--gpus_per_process", type=int, default=0,
                      help="GPUs each process drives (0: leave device visibility alone)")
  parser.add_argument("--cpu_devices_per_process", type=int, default=0,
                      help="CPU devices each process simulates (tests without accelerators)")
  parser.add_argument("command", nargs=argparse.REMAINDER,
                      help="-- then the command each process runs")
  args = parser.parse_args(argv)
  args.command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not args.command:
    parser.error("no command: put it after --")
  if args.processes % args.nodes or not 0 <= args.node_rank < args.nodes:
    parser.error("--processes must be a multiple of --nodes and 0 <= --node_rank < --nodes")
  if args.nodes > 1 and not args.coordinator:
    parser.error("several nodes need --coordinator=host:port (a port free on node 0)")
  return args


def _environment(args, coordinator: str, process_id: int, local_rank: int) -> dict:
  env = dict(os.environ, SPT_DISTRIBUTED="1", JAX_COORDINATOR_ADDRESS=coordinator,
             SPT_NUM_PROCESSES=str(args.processes), SPT_PROCESS_ID=str(process_id))
  if args.gpus_per_process:
    first = local_rank * args.gpus_per_process
    env["JAX_LOCAL_DEVICE_IDS"] = ",".join(
        str(first + i) for i in range(args.gpus_per_process))
  if args.cpu_devices_per_process:
    env["XLA_FLAGS"] = " ".join([
        env.get("XLA_FLAGS", ""),
        f"--xla_force_host_platform_device_count={args.cpu_devices_per_process}"]).strip()
  return env


def main(argv=None) -> int:
  args = _parse(sys.argv[1:] if argv is None else argv)
  coordinator = args.coordinator or f"localhost:{_free_port()}"
  per_node = args.processes // args.nodes
  children = []
  for local_rank in range(per_node):
    process_id = args.node_rank * per_node + local_rank
    children.append(subprocess.Popen(
        args.command, env=_environment(args, coordinator, process_id, local_rank)))
  # A preemption notice to the launcher goes to every process (they save and exit 75).
  signal.signal(signal.SIGTERM, lambda signum, frame: [
      child.send_signal(signal.SIGTERM) for child in children if child.poll() is None])
  code = 0
  while children and not code:
    time.sleep(0.2)
    for child in list(children):
      if child.poll() is not None:
        children.remove(child)
        code = code or child.returncode
  for child in children:  # one failed: the others would wait for it forever
    child.send_signal(signal.SIGTERM)
  for child in children:
    child.wait()
  if code == PREEMPTED_EXIT_CODE:
    print("preempted: the run saved a step; run this same command again to resume",
          file=sys.stderr, flush=True)
  return code


if __name__ == "__main__":
  sys.exit(main())
