"""The Ray options of `grounded run --executor ray` (and `grounded label`): one place for the flags
and their mapping onto `run_on_ray`'s arguments."""

import argparse
from typing import Any, Dict


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    from .ray_runner import DEFAULT_OBJECT_STORE_MB

    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="local: this process (default); ray: Ray Data, reading in parallel and the models in a pool of actors")
    group = parser.add_argument_group("with --executor ray")
    group.add_argument("--ray-address", metavar="ADDRESS",
                       help="an existing Ray cluster, run from one of its nodes: auto (the cluster of this machine) "
                       "or HEAD:6379 (its head); default: start a local Ray. Ray Client (ray://) cannot run Ray Data")
    group.add_argument("--ray-cpus", type=int, metavar="N", help="CPUs of a local Ray (default: all)")
    group.add_argument("--ray-actors", type=int, metavar="N", help="pipeline actors (default: one per GPU, else 1)")
    group.add_argument("--ray-actor-cpus", type=float, metavar="C",
                       help="CPUs each actor asks for (default 1; 0.5 on machines of fewer than 4 CPUs)")
    group.add_argument("--ray-gpus-per-actor", type=float, metavar="G",
                       help="GPUs each actor asks for (default 1 when the cluster has GPUs, else 0)")
    group.add_argument("--ray-threads-per-actor", type=int, default=1, metavar="T",
                       help="torch/OpenMP threads in each actor (default 1)")
    group.add_argument("--ray-object-store-mb", type=int, default=DEFAULT_OBJECT_STORE_MB, metavar="MB",
                       help=f"object store of a local Ray, in MB (default {DEFAULT_OBJECT_STORE_MB})")


def ray_options(args: argparse.Namespace) -> Dict[str, Any]:
    """`run_on_ray` keyword arguments from the parsed flags."""
    return {"address": args.ray_address, "num_cpus": args.ray_cpus, "actors": args.ray_actors,
            "actor_cpus": args.ray_actor_cpus, "gpus_per_actor": args.ray_gpus_per_actor,
            "threads_per_actor": args.ray_threads_per_actor, "object_store_mb": args.ray_object_store_mb}
