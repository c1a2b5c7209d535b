"""Evaluation building blocks: metrics, streaming anomaly metrics, reports, overlays.

  metrics.segmentation_metrics(pred_logits, gt, valid_hw)  IoU / BIoU / Dice (JAX, batched)
  metrics.iou_np, dice_np, boundary_iou_np                  the same in numpy (reference)
  anomaly_metrics.PixelScoreAccumulator                     pixel AUROC and AUPRO, streamed
  reports.write_results(output_dir, records, ...)           results.json / .csv / .md
  reports.print_table(results), flat_means(results)         stdout table, scalars
  reports.comparison_table(runs), comparison_chart(...)     several runs side by side
  overlays.save_overlay(path, image, {step: mask}, gt, ...) a PNG per image to look at
"""
