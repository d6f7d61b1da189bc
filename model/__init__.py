"""Dense-Face model modules on diffusers (paper §3): import the submodules directly.

tiny_sd (tiny offline SD + local loader), pose_branch, identity, pc_adapter, dense_heads,
dense_face (the composed model). Kept import-free so light users do not pay for diffusers.
"""
