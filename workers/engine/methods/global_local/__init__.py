"""Global-Local CLIP (Yu et al., CVPR 2023): masked-global and local CLIP features of each proposal."""
