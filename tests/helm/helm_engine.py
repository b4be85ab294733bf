"""Helm's own Go engine (the PyPI package helm-python-sdk, which bundles libhelm_c) as a small
command line for the Rust tests: lint, render, schema validation and install.

Every command prints one JSON document on stdout. Values come as a JSON file, so the tests
never depend on how a shell quotes them.

    python helm_engine.py lint CHART [--values FILE]
    python helm_engine.py render CHART --release NAME --namespace NS [--values FILE]
    python helm_engine.py validate CHART --values FILE
    python helm_engine.py install CHART --release NAME --namespace NS --kubeconfig PATH [--values FILE]
"""

import argparse
import json
import sys

try:
    import helm_python as helm
except ImportError as error:  # the Rust side turns this exit code into a how-to-fix message
    print(json.dumps({"error": f"helm-python-sdk is not installed: {error}"}))
    sys.exit(3)


def load_values(path):
    if not path:
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["lint", "render", "validate", "install", "version"])
    parser.add_argument("chart", nargs="?")
    parser.add_argument("--values")
    parser.add_argument("--release", default="ferry")
    parser.add_argument("--namespace", default="ferry-system")
    parser.add_argument("--kubeconfig")
    args = parser.parse_args()
    values = load_values(args.values)

    if args.command == "version":
        result = {"helm": helm.helm_sdk_version(), "helm_c": helm.helm_c_version()}
    elif args.command == "lint":
        result = helm.lint(args.chart, values, strict=True, namespace=args.namespace)
    elif args.command == "render":
        with helm.Chart.load(args.chart) as chart:
            # What `helm install` checks first: the values against values.schema.json.
            chart.validate_schema(values)
            manifests = chart.render(values, name=args.release, namespace=args.namespace, is_install=True)
            crds = [{"name": c.get("name"), "data": c.get("data")} for c in chart.crds]
        result = {"manifests": manifests, "crds": crds}
    elif args.command == "validate":
        with helm.Chart.load(args.chart) as chart:
            try:
                chart.validate_schema(values)
                result = {"valid": True}
            except helm.HelmError as error:
                result = {"valid": False, "message": str(error)}
    else:
        with helm.Config(namespace=args.namespace, kubeconfig_path=args.kubeconfig) as config:
            release = config.install(args.chart, args.release, values, namespace=args.namespace, timeout=120)
        result = {"name": release.get("name"), "status": release.get("info", {}).get("status", release.get("status"))}
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # noqa: BLE001 - every failure goes back to the test as text
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
        sys.exit(1)
