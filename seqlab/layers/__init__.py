"""seqlab.layers"""
