"""twistd plugin: ``twistd -n dfs --port 3000 --peers 4000``."""

from __future__ import annotations

from twisted.application.service import IService, IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from dfs_twisted.options import NodeOptions


@implementer(IServiceMaker, IPlugin)
class DfsServiceMaker:
    tapname = "dfs"
    description = "A node of the dfs-twisted distributed encrypted file store."
    options = NodeOptions

    def makeService(self, options: usage.Options) -> IService:
        from dfs_twisted.node import node_for_twistd

        # Built and listening now: a start-up failure is one line and status 1.
        return node_for_twistd(options)


serviceMaker = DfsServiceMaker()
