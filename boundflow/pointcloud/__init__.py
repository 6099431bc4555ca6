"""Point-cloud certification (3DCertify): parametric 3-D transformations, their interval and
Taylor relaxations, PointNet, embedded shapes, certification on the linear domain.

* :func:`interval_bounds`, :func:`taylor_bounds` — relaxations of ``T(p, theta)`` over a theta box;
* :func:`certify` — certify clouds against a transformation range, split into sub-ranges;
* :func:`certify_job` — a whole job (model, clouds, certification, results folder);
* :class:`PointNet`, :func:`make_shapes`, :func:`load_npz`, :func:`train_pointnet`.
"""

from boundflow.pointcloud.certify import CertifyResult, certify
from boundflow.pointcloud.data import CLASSES, load_npz, make_shapes
from boundflow.pointcloud.job import CertifyJob, CertifyJobResult, certify_job, parse_theta
from boundflow.pointcloud.model import PointNet
from boundflow.pointcloud.train import train_pointnet
from boundflow.pointcloud.transforms import TRANSFORMS, apply, interval_bounds, taylor_bounds

__all__ = [
    "CLASSES",
    "CertifyJob",
    "CertifyJobResult",
    "CertifyResult",
    "PointNet",
    "TRANSFORMS",
    "apply",
    "certify",
    "certify_job",
    "interval_bounds",
    "load_npz",
    "make_shapes",
    "parse_theta",
    "taylor_bounds",
    "train_pointnet",
]
