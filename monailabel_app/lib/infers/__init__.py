from .ifim_review import IFIMReview

__all__ = ["IFIMReview"]
