"""my3dgen-hf: personalized 3D generative models as diffusers components."""
