"""FarSLIP's training losses, one per module, each stating its formula."""
