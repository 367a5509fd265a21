"""Manipulation: reconstruct the generated object, rig it with its discovered keypoints, pose it.

Keypoints and object share the cache's world frame, so no registration is needed
(the method notes, "Manipulation").

Shapes use the house letters (N keypoints, V views, H W pixels, M voxels per side), P for
points or Gaussians of the object, and N-1 for bones.
"""
