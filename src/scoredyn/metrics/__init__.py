"""scoredyn.metrics"""
