//! The patched candle-core the workspace builds against (`vendor/candle-core`): its backward
//! pass stores the first gradient reaching a tensor as it is, instead of adding it into a fresh
//! tensor of zeros, and still sums the gradients of a tensor used more than once.
use candle::{Device, Tensor, Var};

#[test]
fn the_first_gradient_is_stored_as_it_is() {
    // d(sum(x·c))/dx is c = -0.0. Added into zeros it would read +0.0 (0 + -0 = +0); stored
    // as it is, its sign survives, which tells the two gradient stores apart.
    let x = Var::new(&[1.5f32, -2.0], &Device::Cpu).unwrap();
    let c = Tensor::new(&[-0.0f32, -0.0], &Device::Cpu).unwrap();
    let y = (x.as_tensor() * c).unwrap().sum_all().unwrap();
    let grads = y.backward().unwrap();
    let g: Vec<f32> = grads.get(&x).unwrap().to_vec1().unwrap();
    assert_eq!(g, [0.0, 0.0]);
    assert!(g.iter().all(|v| v.is_sign_negative()), "{g:?}");
}

#[test]
fn gradients_of_a_tensor_used_twice_add_up() {
    // y = sum(2x + 3x·x): dy/dx = 2 + 6x.
    let x = Var::new(&[1.0f32, -0.5, 2.0], &Device::Cpu).unwrap();
    let twice = x.affine(2.0, 0.0).unwrap();
    let square = (x.as_tensor() * x.as_tensor())
        .unwrap()
        .affine(3.0, 0.0)
        .unwrap();
    let y = (twice + square).unwrap().sum_all().unwrap();
    let grads = y.backward().unwrap();
    let g: Vec<f32> = grads.get(&x).unwrap().to_vec1().unwrap();
    assert_eq!(g, [8.0, -1.0, 14.0]);
    // A gradient stored from a view of another tensor is contiguous.
    let t = Var::new(&[[1.0f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
    let z = t.t().unwrap().affine(2.0, 0.0).unwrap().sum_all().unwrap();
    let grads = z.backward().unwrap();
    let gt: &Tensor = grads.get(&t).unwrap();
    assert!(gt.is_contiguous());
    assert_eq!(gt.to_vec2::<f32>().unwrap(), [[2.0, 2.0], [2.0, 2.0]]);
}
