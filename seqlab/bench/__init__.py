"""seqlab.bench"""
