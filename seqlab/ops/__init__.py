"""seqlab.ops"""
