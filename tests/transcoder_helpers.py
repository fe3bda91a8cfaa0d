"""Random SAELens transcoders for the transcoder tests (shared by the splice and circuit tests)."""
import torch
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.transcoder import SkipTranscoder, SkipTranscoderConfig, Transcoder, TranscoderConfig


def random_tc(d, n_features=32, seed=0, skip=False, metadata=None):
    """A seeded random (Skip)Transcoder d -> n_features -> d; ``metadata`` sets ``cfg.metadata``."""
    g = torch.Generator().manual_seed(seed)
    cls, cfg_cls = (SkipTranscoder, SkipTranscoderConfig) if skip else (Transcoder, TranscoderConfig)
    tc = cls(cfg_cls(d_in=d, d_sae=n_features, d_out=d, apply_b_dec_to_input=False))
    with torch.no_grad():
        tc.W_enc.copy_(torch.randn(d, n_features, generator=g) / d ** 0.5)
        tc.b_enc.copy_(torch.randn(n_features, generator=g) * 0.1)
        tc.W_dec.copy_(torch.randn(n_features, d, generator=g) / n_features ** 0.5)
        tc.b_dec.copy_(torch.randn(d, generator=g) * 0.1)
        if skip:
            tc.W_skip.copy_(torch.randn(d, d, generator=g) * 0.05)
    if metadata:
        tc.cfg.metadata = SAEMetadata(**metadata)
    return tc
