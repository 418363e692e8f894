"""Distillation: a small student trained on the gold pairs plus many more that a stronger teacher
scores (Augmented SBERT). The silver pairs, sampled among the training sentences (random and near
neighbours) and labelled once, kept by what made them (silver), and the command that samples,
labels, trains the student on gold + silver and reports student and teacher (distillation). Above
training and artifacts: it opens any saved model as the teacher and trains a run."""
