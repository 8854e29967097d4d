"""seqlab.tasks"""
