"""``python -m sessionkit_server.cluster up|status|down``: the same as ``sessionkit cluster``."""

from sessionkit_server.cluster.cli import cluster_app

if __name__ == "__main__":
    cluster_app(prog_name="sessionkit cluster")
