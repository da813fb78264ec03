"""3D object detection networks (VoteNet)."""
