"""CSI Identity service."""

from __future__ import annotations

import grpc
from google.protobuf.wrappers_pb2 import BoolValue
from nats.aio.client import Client as NATS

from volplane import __version__
from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc

DRIVER_NAME = "csi.volplane.io"


class Identity(csi_pb2_grpc.IdentityServicer):
    def __init__(self, nc: NATS, *, controller: bool) -> None:
        self._nc = nc
        self._controller = controller

    async def GetPluginInfo(self, request: csi.GetPluginInfoRequest, context: grpc.aio.ServicerContext) -> csi.GetPluginInfoResponse:
        return csi.GetPluginInfoResponse(name=DRIVER_NAME, vendor_version=__version__)

    async def GetPluginCapabilities(self, request: csi.GetPluginCapabilitiesRequest, context: grpc.aio.ServicerContext) -> csi.GetPluginCapabilitiesResponse:
        Service = csi.PluginCapability.Service
        caps = [
            csi.PluginCapability(service=Service(type=Service.VOLUME_ACCESSIBILITY_CONSTRAINTS)),
            csi.PluginCapability(volume_expansion=csi.PluginCapability.VolumeExpansion(type=csi.PluginCapability.VolumeExpansion.ONLINE)),
        ]
        if self._controller:
            caps.insert(0, csi.PluginCapability(service=Service(type=Service.CONTROLLER_SERVICE)))
            # The GroupController is served wherever the Controller is (server.py).
            caps.insert(1, csi.PluginCapability(service=Service(type=Service.GROUP_CONTROLLER_SERVICE)))
        return csi.GetPluginCapabilitiesResponse(capabilities=caps)

    async def Probe(self, request: csi.ProbeRequest, context: grpc.aio.ServicerContext) -> csi.ProbeResponse:
        # Ready while the message bus is reachable: every operation goes through it.
        return csi.ProbeResponse(ready=BoolValue(value=self._nc.is_connected))
