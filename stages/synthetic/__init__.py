"""A synthetic world with 3D ground truth: DeepMimic clips posed on pybullet figures and
rendered on the same orbit cameras as stage one (see stages/cameras.py)."""
