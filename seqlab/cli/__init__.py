"""seqlab.cli"""
