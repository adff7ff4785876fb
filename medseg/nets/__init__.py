"""Segmentation networks (UNet, UNet++) for 2D and 3D, their registry and export to torch.export / ONNX."""

from __future__ import annotations

from medseg.nets.export import OnnxRunner, export_onnx, export_program, load_program
from medseg.nets.registry import available_networks, build_network, network_config
from medseg.nets.unet import UNet
from medseg.nets.unetpp import UNetPlusPlus

__all__ = [
    "OnnxRunner",
    "UNet",
    "UNetPlusPlus",
    "available_networks",
    "build_network",
    "export_onnx",
    "export_program",
    "load_program",
    "network_config",
]
