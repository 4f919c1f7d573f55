# The seed's topology in one process: 3000; 4000 -> 3000; 5000 -> 3000,4000.
#   twistd -ny tac/three_nodes.tac      (data in ./nodes/<port>; DFS_ROOT to change)
import os

from twisted.application.service import Application

from dfs_twisted.node import node_from_args

root = os.environ.get("DFS_ROOT", "nodes")
application = Application("dfs-three-nodes")
for port, peers in [("3000", ""), ("4000", "3000"), ("5000", "3000,4000")]:
    args = ["--port", port, "--data-dir", os.path.join(root, port)]
    if peers:
        args += ["--peers", peers]
    node_from_args(args).setServiceParent(application)
