"""Human and automatic review: the artifact classifier and the blind A/B preference study."""
