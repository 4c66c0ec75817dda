from prunepass.frontends.torch.adapter import TorchModel

__all__ = ["TorchModel"]
