"""`jaxlm compile CONFIG [section.key=value ...] [--mesh AXIS=SIZE,...] [--topology NAME]`."""

from __future__ import annotations


def run(args) -> None:
    import dataclasses

    from jaxlm.config import load_config
    from jaxlm.sharding_report import parse_mesh
    from jaxlm.train.aot import compile_report, topology_devices

    cfg = load_config(args.config, args.overrides)
    if args.mesh is not None:
        cfg = dataclasses.replace(cfg, mesh=parse_mesh(args.mesh))
    devices = topology_devices(args.topology) if args.topology else None
    print(compile_report(cfg, devices).summary())


def register(commands) -> None:
    parser = commands.add_parser(
        "compile", help="compile the train step ahead of time: FLOPs and memory per device"
    )
    parser.add_argument("config", help="a YAML file or a preset name")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    parser.add_argument(
        "--mesh",
        metavar="AXIS=SIZE,...",
        help="mesh shape instead of the config's, e.g. data=2,fsdp=2,tensor=2, using all the "
        "devices (on the CPU, XLA_FLAGS=--xla_force_host_platform_device_count=8 makes 8)",
    )
    parser.add_argument(
        "--topology",
        metavar="NAME",
        help="compile for a TPU topology such as v5e:2x2 or v5p:2x2x2 instead of the local "
        "devices (needs libtpu, not a TPU)",
    )
    parser.set_defaults(run=run)
