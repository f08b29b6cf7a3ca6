"""The network: timm EfficientNet backbone endpoints, the E-FPN decoder and LAA-Net with its heads."""
