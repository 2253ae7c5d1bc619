"""`pinrec local install|up|down|status` (the local stack on 127.0.0.1) and `pinrec demo`: development
tooling, imported by the handlers only."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pinrec.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    local = subparsers.add_parser(
        "local",
        help="provision and run the local stack (Kafka, Redis, Prometheus) on 127.0.0.1",
        description="Local services for one machine. State (PIDs, logs, data) lives in PINREC_STATE_DIR "
        "(default PINREC_HOME/run, PINREC_HOME defaults to ./.pinrec). Set PINREC_KAFKA_BOOTSTRAP, "
        "PINREC_REDIS_URL or PINREC_PROMETHEUS_URL to use existing services instead.",
    )
    actions = local.add_subparsers(dest="action", required=True)
    install = actions.add_parser(
        "install",
        help="download Kafka jars, build helm/kubeconform, apt-get Redis and Prometheus (idempotent)",
    )
    install.add_argument(
        "--apt", action=argparse.BooleanOptionalAction, default=True, help="the Debian packages"
    )
    install.add_argument(
        "--go-tools", action=argparse.BooleanOptionalAction, default=True, help="helm and kubeconform"
    )
    install.add_argument(
        "--k8s",
        action="store_true",
        help="also build a live control plane's binaries (kube-apiserver, kube-controller-manager, "
        "kube-scheduler, etcd, kwok) from the Go module proxy: about 9 minutes, 2 GB of memory and 5 GB "
        "of Go caches on 2 cores when cold, seconds when built",
    )
    install.set_defaults(handler=run_install)
    up = actions.add_parser("up", help="start the services and wait until each is ready")
    for name, what in (("redis", "Redis"), ("prometheus", "Prometheus")):
        up.add_argument(
            f"--{name}",
            action=argparse.BooleanOptionalAction,
            help=f"start {what}: --{name} fails when it is not installed (default: start it when installed)",
        )
    up.set_defaults(handler=run_up)
    down = actions.add_parser("down", help="stop the services that `local up` started here")
    down.add_argument("--purge", action="store_true", help="also delete their data and logs")
    down.set_defaults(handler=run_down)
    status = actions.add_parser("status", help="show which services are up and where")
    status.add_argument("--json", action="store_true", help="print machine-readable JSON")
    status.set_defaults(handler=run_status)

    _register_k8s_e2e(actions)

    demo = subparsers.add_parser(
        "demo",
        help="the whole system end to end on embedded defaults (about 5 minutes on 2 cores)",
        description="Starts the local stack, simulates a world, trains and finetunes the model, starts the "
        "model server and the stream consumer, streams users' activity through Kafka, shows live "
        "recommendations change and outcome budgets steer them, and writes a report.",
    )
    demo.add_argument(
        "--out", type=Path, default=Path("demo-report"), help="report folder (default demo-report)"
    )
    demo.add_argument("--quick", action="store_true", help="a smaller world and shorter training (tests)")
    demo.add_argument(
        "--keep-running", action="store_true", help="leave the stack, server and consumer up afterwards"
    )
    demo.add_argument(
        "--install",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="provision missing tools first",
    )
    demo.set_defaults(handler=run_demo)


def _register_k8s_e2e(actions: argparse._SubParsersAction) -> None:
    e2e = actions.add_parser(
        "k8s-e2e",
        help="install, test, upgrade and uninstall the chart on a private live control plane (kwok nodes)",
        description="Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake "
        "nodes: pods run no containers) on free 127.0.0.1 ports in a fresh state folder; applies the CRDs; "
        "enforces Pod Security `restricted` on the release namespace; installs the chart with the kind and "
        "monitoring values; checks its objects, hooks and pods; validates the InferenceService server-side "
        "against KServe's CRD; runs `helm test`; upgrades with the production-like values and a new model "
        "URI and checks the rollout; uninstalls; stops everything (also when interrupted). Run from the "
        "repository root. The binaries come from `pinrec local install --k8s`.",
    )
    e2e.add_argument(
        "--chart", type=Path, default=Path("helm/pinrec"), help="the chart (default helm/pinrec)"
    )
    e2e.add_argument(
        "--crds",
        type=Path,
        default=Path("../shared/k8s/crds"),
        help="folder of the CRDs to apply first, KServe's and prometheus-operator's (default "
        "../shared/k8s/crds)",
    )
    e2e.add_argument(
        "--set",
        dest="install_set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra value for the install (repeatable), for example a deliberately broken one",
    )
    e2e.add_argument("--nodes", type=int, default=3, help="fake nodes, one zone each (default 3)")
    e2e.add_argument(
        "--timeout-s", type=float, default=300.0, help="each helm call's --timeout (default 300)"
    )
    e2e.add_argument(
        "--state-dir",
        type=Path,
        help="where the control plane keeps its state and logs (default: a fresh folder under "
        "PINREC_STATE_DIR/k8s-e2e); must not exist yet",
    )
    e2e.add_argument(
        "--keep-state",
        action="store_true",
        help="keep the state folder after a passing run (kept on failure)",
    )
    e2e.add_argument("--summary-json", type=Path, help="also write the summary of steps here")
    e2e.set_defaults(handler=run_k8s_e2e)


def run_install(args: argparse.Namespace, settings: Settings) -> int:
    from pinrec.localstack.provision import install_all

    installed = install_all(settings.local_stack, apt=args.apt, go_tools=args.go_tools, k8s=args.k8s)
    for tool, where in installed.items():
        print(f"{tool:<{max(map(len, installed))}} {where}")
    return 0


def run_k8s_e2e(args: argparse.Namespace, settings: Settings) -> int:
    import tempfile

    from pinrec.localstack.chart_e2e import ChartE2ESettings, run_and_report

    for what, path in (("chart", args.chart), ("CRD folder", args.crds)):
        if not path.is_dir():
            raise FileNotFoundError(
                f"no {what} at {path}: run from the repository root or pass --{what[:5].lower().strip()}"
            )
    state_dir = args.state_dir
    if state_dir is None:
        parent = settings.local_stack.state_dir / "k8s-e2e"
        parent.mkdir(parents=True, exist_ok=True)
        state_dir = Path(tempfile.mkdtemp(prefix="run-", dir=parent))
    elif state_dir.exists():
        raise FileExistsError(f"{state_dir} exists: give a new folder, or leave --state-dir out")
    chart = args.chart
    e2e = ChartE2ESettings(
        chart=chart,
        crds=args.crds,
        state_dir=state_dir,
        install_values=(
            chart / "values-kind.yaml",
            chart / "ci" / "monitoring-values.yaml",
            chart / "ci" / "training-values.yaml",
        ),
        upgrade_values=(chart / "ci" / "production-like-values.yaml",),
        dry_run_values=(
            (),
            (chart / "values-production.yaml",),
            (chart / "values-kind.yaml", chart / "ci" / "training-values.yaml"),
        ),
        install_set=tuple(args.install_set),
        nodes=args.nodes,
        timeout_s=args.timeout_s,
    )
    return run_and_report(
        settings.local_stack, e2e, keep_state=args.keep_state, summary_json=args.summary_json
    )


def run_up(args: argparse.Namespace, settings: Settings) -> int:
    from pinrec.localstack.stack import LocalStack

    stack = LocalStack(settings.local_stack)
    stack.up({"redis": args.redis, "prometheus": args.prometheus})
    report = stack.status()
    _print_status(report, as_json=False)
    return 0 if report["kafka"]["up"] else 1


def run_down(args: argparse.Namespace, settings: Settings) -> int:
    from pinrec.localstack.stack import LocalStack

    stopped = LocalStack(settings.local_stack).down(purge=args.purge)
    print("stopped: " + (", ".join(stopped) or "nothing was running"))
    return 0


def run_status(args: argparse.Namespace, settings: Settings) -> int:
    from pinrec.localstack.stack import LocalStack

    _print_status(LocalStack(settings.local_stack).status(), as_json=args.json)
    return 0


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    from pinrec.demo import demo_config, run_demo

    return run_demo(settings, demo_config(args))


def _print_status(report: dict[str, dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for name, info in report.items():
        where = info.get("bootstrap") or info.get("url") or info.get("reason", "")
        owner = f"pid {info['pid']}" if info.get("pid") else ("external" if info["up"] else "")
        print(f"{name:<11} {'up' if info['up'] else 'down':<5} {where}  {owner}".rstrip())
