"""Where a manifest's special locations (idc://) lead: the objects of one slide."""
