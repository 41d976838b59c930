"""Networks: SFT layers, the time-aware encoder, the CFW autoencoder (and later CCSR/DeeDSR parts)."""
