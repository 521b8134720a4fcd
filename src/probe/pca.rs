//! Principal components of a set of points, by subspace iteration on their
//! covariance.
//!
//! With the points x_t (rows of width c) centred on their mean, the covariance is
//! S = (1/n) sum_t (x_t - m)(x_t - m)^T, c x c. The top k eigenvectors of S are
//! found by repeating Q <- orth(S Q) from a fixed start until no axis moves
//! (Gram-Schmidt for orth); each axis's variance is its Rayleigh quotient q^T S q.
//! Axis j converges at the rate max(lambda_{j+1} / lambda_j, lambda_j /
//! lambda_{j-1}) (equal variances leave the axes within their plane free; the
//! iteration then stops at a cap), and the axes come out sorted by variance.

/// The top principal axes of a set of points.
#[derive(Clone, Debug)]
pub struct Pca {
    pub mean: Vec<f64>,
    /// Unit axes, largest variance first.
    pub axes: Vec<Vec<f64>>,
    /// Variance of the points along each axis.
    pub variances: Vec<f64>,
    /// Total variance of the points (the trace of S).
    pub total_variance: f64,
}

const MAX_ITERATIONS: usize = 2000;
const TOLERANCE: f64 = 1e-12;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Orthonormalises the columns in place (modified Gram-Schmidt); a column that
/// vanishes is replaced by the first unit vector orthogonal to the others.
fn orthonormalise(q: &mut [Vec<f64>]) {
    for j in 0..q.len() {
        let (done, rest) = q.split_at_mut(j);
        let col = &mut rest[0];
        for _pass in 0..2 {
            for prev in done.iter() {
                let p = dot(col, prev);
                col.iter_mut().zip(prev).for_each(|(x, y)| *x -= p * y);
            }
        }
        let norm = dot(col, col).sqrt();
        if norm > 1e-30 {
            col.iter_mut().for_each(|x| *x /= norm);
            continue;
        }
        let c = col.len();
        for e in 0..c {
            let mut unit = vec![0.0; c];
            unit[e] = 1.0;
            for prev in done.iter() {
                let p = dot(&unit, prev);
                unit.iter_mut().zip(prev).for_each(|(x, y)| *x -= p * y);
            }
            let n = dot(&unit, &unit).sqrt();
            if n > 1e-6 {
                *col = unit.iter().map(|x| x / n).collect();
                break;
            }
        }
    }
}

impl Pca {
    /// The top `k` principal axes (k <= c) of the rows of `points` (width `c`).
    pub fn fit(points: &[f32], c: usize, k: usize) -> Pca {
        assert!(k >= 1 && k <= c && !points.is_empty() && points.len().is_multiple_of(c));
        let n = points.len() / c;
        let mut mean = vec![0f64; c];
        for row in points.chunks(c) {
            mean.iter_mut().zip(row).for_each(|(m, &x)| *m += x as f64);
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut cov = vec![0f64; c * c];
        let mut centred = vec![0f64; c];
        for row in points.chunks(c) {
            centred
                .iter_mut()
                .zip(row.iter().zip(&mean))
                .for_each(|(d, (&x, m))| *d = x as f64 - m);
            for i in 0..c {
                let di = centred[i];
                let line = &mut cov[i * c..(i + 1) * c];
                line.iter_mut()
                    .zip(&centred)
                    .for_each(|(s, &dj)| *s += di * dj);
            }
        }
        cov.iter_mut().for_each(|s| *s /= n as f64);
        let apply = |x: &[f64]| -> Vec<f64> { cov.chunks(c).map(|line| dot(line, x)).collect() };
        // A start with a component along every direction (e_j would miss axes
        // orthogonal to it).
        let mut q: Vec<Vec<f64>> = (0..k)
            .map(|j| {
                (0..c)
                    .map(|i| 1.0 + ((i * (j + 2) + j) % 7) as f64 / 7.0)
                    .collect()
            })
            .collect();
        orthonormalise(&mut q);
        for _ in 0..MAX_ITERATIONS {
            let mut next: Vec<Vec<f64>> = q.iter().map(|col| apply(col)).collect();
            orthonormalise(&mut next);
            // Movement of each axis (not only of the subspace they span, which can
            // settle before the axes inside it separate).
            let moved = next
                .iter()
                .zip(&q)
                .map(|(col, old)| 1.0 - dot(col, old).powi(2))
                .fold(0.0, f64::max);
            q = next;
            if moved < TOLERANCE {
                break;
            }
        }
        let mut axes: Vec<(f64, Vec<f64>)> = q
            .into_iter()
            .map(|col| (dot(&col, &apply(&col)), col))
            .collect();
        axes.sort_by(|a, b| b.0.total_cmp(&a.0));
        let total_variance = (0..c).map(|i| cov[i * c + i]).sum();
        Pca {
            mean,
            variances: axes.iter().map(|a| a.0).collect(),
            axes: axes.into_iter().map(|a| a.1).collect(),
            total_variance,
        }
    }

    /// Coordinates of `x` along the axes, from the mean.
    pub fn project(&self, x: &[f32]) -> Vec<f64> {
        let centred: Vec<f64> = x
            .iter()
            .zip(&self.mean)
            .map(|(&v, m)| v as f64 - m)
            .collect();
        self.axes.iter().map(|a| dot(a, &centred)).collect()
    }

    /// Share of the total variance along the axes kept.
    pub fn explained(&self) -> f64 {
        if self.total_variance > 0.0 {
            self.variances.iter().sum::<f64>() / self.total_variance
        } else {
            1.0
        }
    }
}
