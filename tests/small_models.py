"""Small SAM specs for fast tests (same code paths as the published sizes)."""

from spt_jax.models.config import EncoderSpec, SamSpec

# 256 px input, 16x16 token grid; window 5 does not divide 16, so windows are padded.
SMALL_SPEC = SamSpec(
    encoder=EncoderSpec(image_size=256, patch_size=16, embed_dim=96, depth=4, num_heads=4,
                        window_size=5, global_attn_indexes=(1, 3), out_chans=64),
    prompt_embed_dim=64, mask_in_chans=8, decoder_mlp_dim=128)

# 64 px input for tests that only need the plumbing.
TINY_SPEC = SamSpec(
    encoder=EncoderSpec(image_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                        window_size=3, global_attn_indexes=(1,), out_chans=32),
    prompt_embed_dim=32, mask_in_chans=8, decoder_mlp_dim=32, decoder_num_heads=2,
    iou_head_hidden_dim=32)

# The smallest model that still has windowed and global blocks and a two-way block:
# for tests that compile many variants.
MICRO_SPEC = SamSpec(
    encoder=EncoderSpec(image_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2,
                        window_size=3, global_attn_indexes=(1,), out_chans=16),
    prompt_embed_dim=16, mask_in_chans=8, decoder_depth=1, decoder_mlp_dim=16,
    decoder_num_heads=2, iou_head_hidden_dim=16)
