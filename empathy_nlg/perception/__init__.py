"""Perception: emotion (32 ED labels + polarity), emotion causes, communication mechanisms, crisis."""
