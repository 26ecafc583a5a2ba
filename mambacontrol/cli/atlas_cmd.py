"""``mambacontrol atlas list|info``: what atlases are bundled and what they hold."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("atlas", help="list bundled atlases or describe one")
    asub = p.add_subparsers(dest="atlas_command", metavar="ACTION", required=True)
    pl = asub.add_parser("list", help="names of the bundled atlases")
    pl.set_defaults(func=run_list)
    pi = asub.add_parser("info", help="grids, region count and key regions of an atlas")
    pi.add_argument("name", nargs="?", default=None, help="atlas name (default: the default atlas)")
    pi.add_argument("--verify", action="store_true", help="also check every file's checksum")
    pi.set_defaults(func=run_info)


def run_list(args: argparse.Namespace) -> int:
    # lazy: keeps --help free of numpy and nibabel
    from mambacontrol.atlas import DEFAULT_ATLAS, list_atlases, load_atlas

    for name in list_atlases():
        atlas = load_atlas(name)
        grids = ", ".join(atlas.meta["grids"])
        mark = " (default)" if name == DEFAULT_ATLAS else ""
        print(f"{name}{mark}: {len(atlas.regions)} regions, grids {grids}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from mambacontrol.atlas import DEFAULT_ATLAS, load_atlas  # lazy: keeps --help fast

    name = args.name or DEFAULT_ATLAS
    atlas = load_atlas(name)
    print(f"atlas {atlas.id}")
    print(f"  {atlas.meta['description']}")
    print(f"  sources: {', '.join(f'{k} from {v}' for k, v in atlas.meta['sources'].items())}")
    print(f"  regions: {len(atlas.regions)} ({len(atlas.group_names())} groups)")
    print("  licence:")
    for part, text in (atlas.licence
                       or {"all": "not stated in atlas.json; ask its provider"}).items():
        print(f"    {part}: {text}")
    notices = atlas.root.parent / "SOURCES.md"
    if notices.is_file():
        print(f"    full notices: {notices}")
    for grid_name, g in atlas.meta["grids"].items():
        a = load_atlas(name, grid_name)
        if args.verify:
            a.verify()
        shape = "×".join(str(s) for s in g["shape"])
        print(f"  grid {grid_name}: {shape} voxels at {g['spacing_mm']:g} mm, "
              f"brain {a.mask.sum() * a.voxel_volume / 1000:.0f} cm³, checksum {a.checksum[:12]}"
              + (" (files verified)" if args.verify else ""))
    print(f"  key regions, volume in mm³ on grid {atlas.grid_name}:")
    vols = atlas.key_group_volumes()
    for key, ids in atlas.key_groups.items():
        shown = ("labels " + ", ".join(str(i) for i in ids) if len(ids) <= 6
                 else f"{len(ids)} labels")
        print(f"    {key:<20} {vols[key]:>12,.0f}   ({shown})")
    return 0
