# One dfs node, configured by environment variables (or edit the defaults below):
#   DFS_PORT=3000 DFS_PEERS=4000,5000 DFS_DATA_DIR=./nodes/3000 twistd -ny tac/node.tac
# DFS_LISTEN, DFS_API and DFS_ORG are optional, as the plugin's --listen/--api/--org;
# with DFS_DATA_DIR of a node made by `dfs init`, its dfs.toml supplies the rest.
import os

from twisted.application.service import Application

from dfs_twisted.node import node_from_args

args = []
for variable, flag in [
    ("DFS_PORT", "--port"),
    ("DFS_PEERS", "--peers"),
    ("DFS_DATA_DIR", "--data-dir"),
    ("DFS_LISTEN", "--listen"),
    ("DFS_API", "--api"),
    ("DFS_ORG", "--org"),
]:
    if os.environ.get(variable):
        args += [flag, os.environ[variable]]
if not os.environ.get("DFS_PORT") and not os.environ.get("DFS_DATA_DIR"):
    args += ["--port", "3000"]

application = Application("dfs")
# A bad setting, a port in use or an unusable data dir ends twistd here, with one line.
node_from_args(args).setServiceParent(application)
